from services.claim_router.server import main

main()
