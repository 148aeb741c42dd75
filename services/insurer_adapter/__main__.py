from services.insurer_adapter.server import main

main()
