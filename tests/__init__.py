"""Test suite of streamrec."""
