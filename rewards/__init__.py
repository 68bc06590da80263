"""dai_swarm.rewards: the append-only, tamper-evident, crash-safe reward log.

- :class:`RewardLog` appends hash-chained records with group commit and signed checkpoints;
- :func:`compute_round_record` turns a round's replicated inputs into its canonical record body;
- :func:`verify_log` pinpoints the first bad record; :func:`diff_logs` the first disagreeing round;
- :func:`ledger_report` computes totals and ecosystem metrics.
"""

from .diff import diff_logs
from .log import RecoveryReport, Receipt, RewardLog
from .merkle import inclusion_proof, merkle_root, verify_inclusion
from .records import RECORD_TYPES, Record, parse_line
from .report import ledger_report
from .rules import Contributor, compute_round_record, split_pro_rata
from .verify import verify_log

__all__ = [
    "RECORD_TYPES",
    "Contributor",
    "Receipt",
    "RecoveryReport",
    "Record",
    "RewardLog",
    "compute_round_record",
    "diff_logs",
    "inclusion_proof",
    "ledger_report",
    "merkle_root",
    "parse_line",
    "split_pro_rata",
    "verify_inclusion",
    "verify_log",
]
