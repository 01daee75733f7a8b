"""Step files: load (with positions), validate and compile roles into agent bundles.

- :mod:`controller.stepfiles.loader`: YAML with the line/column and quoting style of
  every key and value (ruamel.yaml round-trip, YAML 1.2).
- :mod:`controller.stepfiles.validate`: steps, handlers and checks against the
  modules' and checks' own schemas; every problem becomes a positioned Diagnostic.
- :mod:`controller.stepfiles.compile`: roles, dependencies, variables, tags, files,
  the content hash and the bundle (``compile_role``, ``validate_roles``, ``bundle_json``).
"""
