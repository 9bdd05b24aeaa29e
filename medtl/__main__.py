from medtl.cli import entry

entry()
