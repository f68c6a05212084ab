"""Backends execute an artifact's graph; the manifest's runtime.backend picks one."""
