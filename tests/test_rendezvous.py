"""Where a rank sits comes from the scheduler's variables (SLURM under srun, or torchrun/our local backend);
missing or contradictory variables are an error, never a silent world-size-1 run."""

import pytest

from msca.runtime.dist import RendezvousError, first_host, local_device, process_env, slurm_port

SRUN_TASK = {
    "SLURM_JOB_ID": "1234",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[007,009]",
    "SLURM_NTASKS_PER_NODE": "2",
}


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node[1-2]", "node1"),
        ("node1,node2", "node1"),
        ("a1,b[3-4]", "a1"),
        ("gpu[007,009-010],cpu1", "gpu007"),
        ("solo", "solo"),
    ],
)
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_srun_task_gets_rank_world_local_rank_and_a_job_derived_rendezvous():
    env = process_env(SRUN_TASK)
    assert env == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu007",
        "MASTER_PORT": str(slurm_port("1234")),
    }
    assert process_env({**SRUN_TASK, "SLURM_PROCID": "0"})["MASTER_PORT"] == env["MASTER_PORT"]  # same on all


@pytest.mark.parametrize(
    "env, message",
    [
        ({**SRUN_TASK, "RANK": "0"}, "RANK=0 contradicts SLURM's 3"),
        ({k: v for k, v in SRUN_TASK.items() if k != "SLURM_NTASKS"}, "without SLURM_NTASKS"),
        ({**SRUN_TASK, "SLURM_PROCID": "4"}, "outside world size 4"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, "not in an srun task"),  # the batch shell, not srun
        ({"RANK": "1", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"),
    ],
)
def test_missing_or_inconsistent_variables_are_an_error(env, message):
    with pytest.raises(RendezvousError, match=message):
        process_env(env)


def test_torchrun_variables_and_a_lone_process():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert process_env(torchrun)["RANK"] == "1" and process_env(torchrun)["MASTER_ADDR"] == "10.0.0.1"
    lone = process_env({})
    assert (lone["RANK"], lone["WORLD_SIZE"], lone["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")


def test_gpu_of_a_rank_with_all_or_one_visible():
    assert local_device(3, 8) == 3 and local_device(3, 1) == 0
    with pytest.raises(RendezvousError, match="one task per GPU"):
        local_device(4, 2)
