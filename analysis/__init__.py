"""Plots and tables from run folders (ours; the reference's layout is issue 4's work)."""
