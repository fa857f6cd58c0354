"""Request and admission ids: unique names, cheap to make."""

from __future__ import annotations


def test_new_ids_are_unique_in_a_process_and_differ_in_a_forked_child():
    """32 hex digits like a uuid4's; a forked worker draws its own prefix, so two workers never collide."""
    import os

    from sidecar.core.exchange import new_id
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read), os.close(write)
    assert child[:20] != next(iter(ids))[:20] and child not in ids
