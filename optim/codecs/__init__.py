"""Compression codecs and the bounded wire frame."""
