"""Bridges to other evaluation tools. Each is optional and imported only when used."""
