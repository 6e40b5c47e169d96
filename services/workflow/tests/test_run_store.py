"""The run store on a real nats-server: a 10,000-index array's run is a head and chunks, each
value under max_payload; changes are compare-and-sets of the head that write only what changed."""

from __future__ import annotations

import asyncio

import pytest

from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import validate_pipeline
from trainyard_workflow.core import JobEnded, JobKnown, advance, evolve, evolve_all
from trainyard_workflow.runchunks import CHUNK_JOBS, join, split
from trainyard_workflow.store import RunStore

pytestmark = [pytest.mark.workflow]


def _array_run(array: str = "0-9999") -> PipelineRun:
    step = {"name": "train", "array": array, "job": {"name": "train", "command": ["true"]}}
    spec = validate_pipeline({"name": "big", "steps": [step]})
    run, _ = advance(PipelineRun.start("0mx6rnys55u4iz76", spec))
    return run


@pytest.mark.unit
def test_a_run_cut_into_a_head_and_chunks_joins_back_whole():
    run = _array_run("0-9999:3,20000-20010")
    head, chunks = split(run)
    assert all(not step.jobs for step in head.steps.values())
    assert all(len(jobs) <= CHUNK_JOBS for jobs in chunks.values())
    assert sum(len(jobs) for jobs in chunks.values()) == len(run.steps["train"].jobs) == 3345
    assert join(head, chunks) == run


@pytest.mark.unit
def test_evolving_many_facts_at_once_is_evolving_them_one_by_one():
    run = _array_run("0-9%4")
    jobs = run.steps["train"].jobs
    facts = [
        JobKnown("train", 0, jobs[0].key, "job-a"),
        JobKnown("train", 0, jobs[0].key, "job-b"),  # a second answer for the same key: stale
        JobEnded("train", 0, "job-a", "succeeded"),
        JobEnded("train", 1, "job-x", "failed"),  # a job this step never had
        JobKnown("train", 2, "workflow:other:fit:2:1", "job-c"),  # another run's key
        JobKnown("train", 3, jobs[3].key, "job-d"),
    ]
    one_by_one = run
    for fact in facts:
        one_by_one = evolve(one_by_one, fact)
    assert evolve_all(run, facts) == one_by_one
    assert (
        one_by_one.steps["train"].jobs[0].outcome == "succeeded"
        and one_by_one.steps["train"].jobs[2].job_id is None
    )


@pytest.mark.service
async def test_a_ten_thousand_index_array_is_stored_in_values_under_max_payload(bus):
    from nats.js.api import KeyValueConfig

    # as the provision step makes it (shared/bus.py): a file bucket keeping 5 revisions
    kv = await bus.js.create_key_value(KeyValueConfig(bucket=f"{bus.subjects.buckets.pipelines}", history=5))
    store = RunStore(kv)
    submitted = _array_run()
    answers = [
        JobKnown("train", i, job.key, f"job{i:016d}") for i, job in submitted.steps["train"].jobs.items()
    ]
    done = [JobEnded("train", a.index, a.job_id, "succeeded") for a in answers if a.index not in (17, 4321)]
    run = evolve_all(submitted, [*answers, *done])  # as the array nears its end
    assert len(run.model_dump_json()) > bus.nc.max_payload  # what one record would have been
    await store.create(run)
    sizes = [len((await kv.get(key)).value) for key in await kv.keys()]
    # the head, its spec's key, the chunks
    assert len(sizes) == 2 + 10_000 // CHUNK_JOBS and max(sizes) < bus.nc.max_payload / 8
    got, _ = await store.get(run.run_id)
    assert got == run
    assert await store.run_ids() == [run.run_id]

    def ended(r: PipelineRun, index: int):
        return evolve(r, JobEnded("train", index, f"job{index:016d}", "failed")), None

    # two writers at once: each a compare-and-set of the head, the loser reads again, both land
    await asyncio.gather(
        store.mutate(run.run_id, lambda r: ended(r, 4321)),
        store.mutate(run.run_id, lambda r: ended(r, 17)),
    )
    got, _ = await store.get(run.run_id)
    jobs = got.steps["train"].jobs
    assert jobs[4321].outcome == "failed" and jobs[17].outcome == "failed" and jobs[18].outcome == "succeeded"
    # only the changed chunks got new keys; the ones they replaced, and any a loser wrote, are gone
    assert len(await kv.keys()) == 2 + 10_000 // CHUNK_JOBS


@pytest.mark.service
async def test_a_read_racing_a_commit_reads_the_newer_head_not_a_purged_chunk(bus):
    from nats.js.api import KeyValueConfig

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    store = RunStore(kv)
    run = _array_run("0-999")
    await store.create(run)
    stale = (await store._read(run.run_id)).head  # what a reader had when the commit came
    key = run.steps["train"].jobs[5].key
    await store.mutate(run.run_id, lambda r: (evolve(r, JobKnown("train", 5, key, "job5")), None))
    assert await store._read_chunks(run.run_id, stale) is None  # its chunk was replaced and purged
    got, _ = await store.get(run.run_id)
    assert got.steps["train"].jobs[5].job_id == "job5"


@pytest.mark.service
async def test_a_retry_that_drops_a_whole_chunk_of_jobs_reads_back_without_them(bus):
    from nats.js.api import KeyValueConfig

    from trainyard_workflow.core import retry

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    store = RunStore(kv)
    submitted = _array_run("0-999")
    answers = [JobKnown("train", i, job.key, f"job{i}") for i, job in submitted.steps["train"].jobs.items()]
    ends = [JobEnded("train", i, f"job{i}", "succeeded" if i < CHUNK_JOBS else "failed") for i in range(1000)]
    failed, _ = advance(evolve_all(submitted, [*answers, *ends]))
    assert failed.state.value == "failed"
    await store.create(failed)

    await store.mutate(failed.run_id, lambda r: (retry(r), None))
    got, _ = await store.get(failed.run_id)
    # the failed indices' chunk is named no more: they are not submitted, not succeeded, not there
    assert sorted(got.steps["train"].jobs) == list(range(CHUNK_JOBS))
    assert got.steps["train"].attempt == 2 and got.attempt == 2
    assert len(await kv.keys()) == 3  # the head, its spec and the one chunk left


class CountingGets:
    """The bucket, counting the values read from it."""

    def __init__(self, kv):
        self.kv, self.gets = kv, 0

    async def get(self, key):
        self.gets += 1
        return await self.kv.get(key)

    def __getattr__(self, name):
        return getattr(self.kv, name)


@pytest.mark.service
async def test_a_run_read_again_is_its_head_and_the_chunks_another_writer_changed(bus):
    from nats.js.api import KeyValueConfig

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    mine, other = CountingGets(kv), CountingGets(kv)
    store, replica = RunStore(mine), RunStore(other)  # two replicas of the service on one bucket
    run = _array_run("0-1999")  # a head and 4 chunks
    await store.create(run)
    assert (await store.get(run.run_id))[0] == run
    mine.gets = 0
    assert (await store.get(run.run_id))[0] == run
    assert mine.gets == 1  # the head: the chunks it names were written by this store
    # a revision's head is parsed once (parsing validates the whole pipeline again)
    assert (await store._read(run.run_id)).head is (await store._read(run.run_id)).head

    key = run.steps["train"].jobs[5].key
    await replica.mutate(run.run_id, lambda r: (evolve(r, JobKnown("train", 5, key, "job5")), None))
    mine.gets = 0
    got, _ = await store.get(run.run_id)
    assert got.steps["train"].jobs[5].job_id == "job5" and got == (await replica.get(run.run_id))[0]
    assert mine.gets == 2  # the head and the one chunk the other replica wrote anew
    assert await store.exists(run.run_id) and not await store.exists("0mx6rnys55u4zzzz")
    mine.gets = 0
    assert await store.exists(run.run_id) and mine.gets == 0  # a run it has read: no get (a run stays)
    assert await RunStore(kv).exists(run.run_id)  # a store that never read it asks the bucket


@pytest.mark.service
async def test_a_change_sets_against_the_head_it_holds_and_reads_only_when_another_wrote(bus):
    from nats.js.api import KeyValueConfig

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    mine = CountingGets(kv)
    store, replica = RunStore(mine), RunStore(kv)  # two replicas of the service on one bucket
    run = _array_run("0-1999")
    jobs = run.steps["train"].jobs

    def known(index: int):
        return lambda r: (evolve(r, JobKnown("train", index, jobs[index].key, f"job{index}")), None)

    await store.create(run)
    mine.gets = 0
    await store.mutate(run.run_id, known(1))
    assert mine.gets == 0  # the head it wrote last: set against its revision, not read first

    await replica.mutate(run.run_id, known(5))  # the head this store holds is stale now
    moved, _ = await store.mutate(run.run_id, known(7))
    assert mine.gets >= 1  # its compare-and-set failed: the head was read, the change made again
    stored, _ = await RunStore(kv).get(run.run_id)
    assert stored == moved
    assert [stored.steps["train"].jobs[i].job_id for i in (1, 5, 7)] == ["job1", "job5", "job7"]

    await replica.mutate(run.run_id, known(9))
    # nothing to change on the copy it holds is no answer (the copy may be stale): the head is read
    unchanged, _ = await store.mutate(run.run_id, lambda r: (r, None))
    assert unchanged.steps["train"].jobs[9].job_id == "job9"


@pytest.mark.unit
def test_the_chunk_cache_keeps_at_most_its_jobs_dropping_the_least_recently_used():
    from trainyard_contracts.runs import ChildJob
    from trainyard_workflow.store import ChunkCache

    def chunk(n: int):
        return {i: ChildJob(key=f"k{i}") for i in range(n)}

    cache = ChunkCache(max_jobs=10)
    cache.put("a", chunk(4))
    cache.put("b", chunk(4))
    assert cache.get("a") is not None  # a used last: b goes first
    cache.put("c", chunk(4))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("a", chunk(6))  # the same key again counts once
    assert len(cache) == 2 and cache.get("c") is not None
    cache.drop("c")
    assert len(cache) == 1 and cache.get("c") is None


def _dag_run(layers: int = 50, width: int = 10) -> PipelineRun:
    """The bench's DAG (tests/bench/bench_workflow.py): 50 layers of 10, two dependencies each."""
    steps = [
        {
            "name": f"s{layer}-{i}",
            "depends": sorted({f"s{layer - 1}-{i}", f"s{layer - 1}-{(i + 1) % width}"}) if layer else [],
            "job": {"name": "step", "command": ["true"]},
        }
        for layer in range(layers)
        for i in range(width)
    ]
    run, _ = advance(
        PipelineRun.start("0mx6rnys55u4dag1", validate_pipeline({"name": "dag", "steps": steps}))
    )
    return run


@pytest.mark.unit
def test_a_run_split_like_the_run_it_was_changed_from_is_the_same_split():
    before = _array_run("0-1999")  # one step, 4 chunks, beside a DAG's many steps below
    dag = _dag_run(layers=5, width=4)
    for run in (before, dag):
        first = run.steps[next(iter(run.steps))]
        facts = [JobKnown(name, 0, first.jobs[0].key, "j0") for name in [next(iter(run.steps))]]
        changed = evolve_all(run, facts)
        changed, _ = advance(evolve_all(changed, [JobEnded(next(iter(run.steps)), 0, "j0", "succeeded")]))
        head, chunks = split(run)
        like = split(changed, (run, head, chunks))
        assert like == split(changed)
        assert join(*like) == changed
    untouched = list(dag.steps)[-1]
    assert like[0].steps[untouched] is head.steps[untouched]  # taken as it was, not copied again


@pytest.mark.service
async def test_the_pipeline_spec_is_written_once_and_the_head_carries_the_steps_states_only(bus):
    from nats.js.api import KeyValueConfig

    from trainyard_workflow.runchunks import RunHead, spec_key

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    mine = CountingGets(kv)
    store, replica = RunStore(mine), RunStore(kv)
    run = _dag_run()
    await store.create(run)
    spec_revision = (await kv.get(spec_key(run.run_id))).revision
    head = (await kv.get(run.run_id)).value
    # what the head was with the spec inline, against what it is
    inline = RunHead(run=split(run)[0], chunks={}).model_dump_json().encode()
    assert len(head) * 4 < len(inline) and b"command" not in head
    assert (await replica.get(run.run_id))[0] == run  # another replica reads it whole

    for i in range(3):
        job = run.steps[f"s0-{i}"].jobs[0]
        await store.mutate(
            run.run_id, lambda r, i=i, k=job.key: (evolve(r, JobKnown(f"s0-{i}", 0, k, f"j{i}")), None)
        )
    assert (await kv.get(spec_key(run.run_id))).revision == spec_revision  # not written again
    mine.gets = 0
    got, _ = await store.get(run.run_id)
    assert mine.gets == 1 and got.steps["s0-2"].jobs[0].job_id == "j2"  # the head alone, nor the spec
    assert (await replica.get(run.run_id))[0] == got
    # the run it wrote last, at the revision it wrote, is returned as written (not joined again)
    assert (await store.get(run.run_id))[0] is got
    job = run.steps["s0-3"].jobs[0]
    moved, _ = await replica.mutate(
        run.run_id, lambda r: (evolve(r, JobKnown("s0-3", 0, job.key, "j3")), None)
    )
    again, _ = await store.get(run.run_id)  # another writer's revision: read and joined
    assert again == moved and again is not got and again.steps["s0-3"].jobs[0].job_id == "j3"


@pytest.mark.service
async def test_a_head_stored_with_its_spec_inline_reads_and_moves_on(bus):
    """A run stored before the spec had its own key (its head: RunHead's JSON, the spec inline)
    reads as it was; its first change writes the spec's key and a head in the new form."""
    from nats.js.api import KeyValueConfig

    from trainyard_workflow.runchunks import RunHead, spec_key

    kv = await bus.js.create_key_value(KeyValueConfig(bucket=bus.subjects.buckets.pipelines, history=5))
    run = _dag_run(layers=3, width=4)
    head, chunks = split(run)
    names = {name: f"old{n}" for n, name in enumerate(chunks)}
    for name, jobs in chunks.items():
        from trainyard_workflow.runchunks import CHUNK_ADAPTER, chunk_key

        await kv.create(chunk_key(run.run_id, name, names[name]), CHUNK_ADAPTER.dump_json(jobs))
    await kv.create(run.run_id, RunHead(run=head, chunks=names).model_dump_json().encode())
    store = RunStore(kv)
    assert (await store.get(run.run_id))[0] == run

    key = run.steps["s0-1"].jobs[0].key
    changed, _ = await store.mutate(run.run_id, lambda r: (evolve(r, JobKnown("s0-1", 0, key, "j1")), None))
    assert (await kv.get(run.run_id)).value.startswith(b'{"spec":')
    assert (await kv.get(spec_key(run.run_id))).value == run.spec.model_dump_json().encode()
    assert (await RunStore(kv).get(run.run_id))[0] == changed  # a fresh reader: the new form
