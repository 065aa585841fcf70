"""Diagnostics computed outside training: study functions for ``bilevel-figure`` entries with a
``study:`` key (:mod:`bilevel.app.study`)."""
