"""Benchmarks (``regionedit bench``): ShapesBench and real-data sets, baselines, speed and memory.

A front end: every method runs through the library's public calls on one loaded model.
"""
