"""The plugin framework: hook specifications, the payloads they carry, the analyzer base class,
the registries plugins fill and the manager that loads them (the core's own data sets, losses,
schedules are registered by :mod:`dlf.hooks.builtins`, like any plugin's)."""
