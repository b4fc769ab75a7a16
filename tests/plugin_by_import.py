"""A plugin module that registers its method by import (the entry point names this module)."""

from bench.api import Method, register_method


@register_method("toy-by-import")
class ByImport(Method):
    axes = ("emb",)
    description = "registered by importing its module"
