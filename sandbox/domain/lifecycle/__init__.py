"""The use cases of sandboxes, one concern per module, all speaking to ports through the
shared `Sandboxes` (sandboxes.py):

- execution.py     execute_script: a script in a fresh sandbox, gone afterwards
- creation.py      run_detached, create_session
- reading.py       get_sandbox, list_sandboxes, read_output, follow_output
- work.py          exec_in_sandbox, write_file, read_file, list_files
- suspension.py    suspend_sandbox
- restoration.py   restore_sandbox
- deletion.py      delete_sandbox
- reaping.py       reap: idle sessions suspended, old records deleted
- reconciliation.py reconcile: the store and the host agree after a start
- shutdown.py      shut_down: suspend what runs, stop the supervisors
- supervision.py   the task per running sandbox that records how it ended
- admission.py     places under max_running and memory while a sandbox starts
"""
