from benchmarks.extras.cli import main

main()
