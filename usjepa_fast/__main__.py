from usjepa_fast.cli.main import main

main()
