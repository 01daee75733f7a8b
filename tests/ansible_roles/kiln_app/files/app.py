"""A tiny HTTP service for kiln's differential tests."""

import http.server
import sys

address, port = sys.argv[1], int(sys.argv[2])
http.server.HTTPServer((address, port), http.server.SimpleHTTPRequestHandler).serve_forever()
