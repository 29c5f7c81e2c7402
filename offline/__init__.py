"""Offline half of streamrec: load click logs, train GRU4REC, evaluate, publish model artifacts."""
