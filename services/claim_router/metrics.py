"""Router domain metrics (RPC counts/latency come from the shared interceptor)."""

from prometheus_client import Counter, Gauge, Histogram

CLAIM_OUTCOMES = Counter("iclaim_claims_total", "Claims received and decided, by state.", ["state"])
DECISION_LATENCY = Histogram(
    "iclaim_claim_decision_seconds",
    "Submit-to-decision time of decided claims.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 300),
)
# The latency SLO's measure: SubmitClaim's RPC time also holds the wait of up to
# the caller's decision_timeout for the insurer, which is not the hub's doing.
SUBMIT_LATENCY = Histogram(
    "iclaim_claim_submit_seconds",
    "SubmitClaim until its claim is stored (or found stored), before any wait for the decision.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Participation as the service we model reports it (refreshed every minute).
HOSPITALS_REGISTERED = Gauge("iclaim_participants_hospitals_registered", "Hospitals in the registry.")
HOSPITALS_LIVE = Gauge(
    "iclaim_participants_hospitals_live", "Hospitals that submitted a claim in the last 30 days."
)
INSURERS_CONNECTED = Gauge(
    "iclaim_participants_insurers_connected", "Insurers whose pushes or pulls currently succeed (HEALTHY)."
)
