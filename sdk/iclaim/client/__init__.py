"""The iClaim client SDK for HIS vendors and insurers (Python)."""

from iclaim.client.credentials import Credentials, load_dev_credentials
from iclaim.client.hospital import HospitalClient, OpenedDecision
from iclaim.client.insurer import InsurerClient

__all__ = ["Credentials", "HospitalClient", "InsurerClient", "OpenedDecision", "load_dev_credentials"]
