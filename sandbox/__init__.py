"""The sandbox insurers (docs/protocol.md §8): the 60 simulated insurers of the
dev stack, run as a participant process of their own on the insurer kit
(`iclaim.insurer`), holding their own private keys, connected the ways a real
insurer is (§10): gRPC push, webhook push, pull. Imports nothing of the hub.

    python -m sandbox --credentials .iclaim/dev/sandbox.json \\
        --grpc 127.0.0.1:50101 --webhook 127.0.0.1:50102 --health 127.0.0.1:50103 \\
        --state-dir .iclaim/dev/sandbox
"""
