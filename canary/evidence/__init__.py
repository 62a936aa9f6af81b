"""What an auditor asks of the audit trail, answered from its records (pure logic: no I/O).

``pointintime`` answers "which model served this InferenceService at instant T, with what
share of traffic, under which rollout, approved by whom, on what evidence?"
"""
