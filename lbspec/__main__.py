from lbspec.cli import entry

entry()
