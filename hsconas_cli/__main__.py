from hsconas_cli.cli import main

if __name__ == "__main__":  # a guard: lowering workers (spawn) import this module again
    main()
