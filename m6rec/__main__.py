from m6rec.cli import main

main()
