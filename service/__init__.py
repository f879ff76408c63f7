"""Keyledger's write side and HTTP surface."""
