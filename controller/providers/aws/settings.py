"""``providers.aws`` settings: checked by controller/providers/aws_settings.py (the schema engine's), re-exported here
so the package reads them from its own namespace."""

from kiln.controller.providers.aws_settings import AwsSettings, parse_settings

__all__ = ["AwsSettings", "parse_settings"]
