from medtl.cli import run

run()
