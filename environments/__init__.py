"""Concrete environments, importable as `tapeagents.environments.<name>`.

They live outside the core package to show that they are not the core: the core never imports
them.
"""
