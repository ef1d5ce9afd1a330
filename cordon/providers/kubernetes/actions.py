"""Kubernetes actions (none registered yet: containment of a binding is unfinished, see issue 17)."""
