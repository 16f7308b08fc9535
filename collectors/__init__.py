"""Collectors: one module and one class per source; see collectors/base.py for the protocol."""
