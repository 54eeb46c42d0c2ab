"""Developer tools, run from the repository root (`python -m tools.<name>`) or by hand; not
part of the installed package. They may read and write the repository's files."""
