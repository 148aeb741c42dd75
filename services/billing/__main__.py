from services.billing.server import main

main()
