"""Adapters that turn batch sources into seqify Sequences."""
