"""Plots, tables and reports from run folders, ours and the reference's (docs/analysis.md)."""
