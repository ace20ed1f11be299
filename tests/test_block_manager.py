"""Block allocator and block tables: allocation, free, reference counts, copy-on-write."""
import pytest

from utils.kv.block_manager import BlockAllocator, BlockManager, OutOfBlocksError


def test_allocator_free_list_and_ref_counts():
    a = BlockAllocator(num_blocks=3, block_size=4)
    b0, b1 = a.allocate(), a.allocate()
    assert (b0, b1) == (0, 1) and a.num_free == 1 and a.num_used == 2
    a.share(b0)
    assert a.ref_count[b0] == 2
    a.release(b0)
    assert a.num_free == 1, "a block with one owner left must stay allocated"
    a.release(b0)
    assert a.num_free == 2 and a.ref_count[b0] == 0
    with pytest.raises(ValueError):
        a.release(b0)                                   # double free is an error, not silent corruption
    with pytest.raises(ValueError):
        a.share(b0)                                     # cannot share a free block
    a.allocate(), a.allocate()
    with pytest.raises(OutOfBlocksError):
        a.allocate()


def test_block_table_grows_one_block_at_a_time():
    m = BlockManager(num_blocks=8, block_size=4)
    m.allocate(seq_id=0, num_tokens=5)                  # 5 tokens -> 2 blocks
    assert m.tables[0].blocks == [0, 1] and m.num_used_blocks == 2
    assert m.slots(0, 0, 5) == [0, 1, 2, 3, 4]
    for expected_slot in (5, 6, 7):                     # fill block 1
        slot, copy = m.append_slot(0)
        assert slot == expected_slot and copy is None
    slot, copy = m.append_slot(0)                       # 9th token opens block 2
    assert slot == 8 and m.tables[0].blocks == [0, 1, 2] and m.tables[0].num_tokens == 9
    assert m.used_tokens() == 9
    m.free(0)
    assert m.num_used_blocks == 0 and m.allocator.num_free == 8


def test_freed_blocks_are_reused_and_tables_need_not_be_contiguous():
    m = BlockManager(num_blocks=4, block_size=2)
    m.allocate(0, 2)
    m.allocate(1, 2)
    m.free(0)                                           # hole at block 0
    m.allocate(2, 2)
    m.allocate(3, 4)                                    # takes blocks 3 and 0: not adjacent, still fine
    assert sorted(m.tables[3].blocks) == [0, 3]
    assert m.slot(3, 2) == m.tables[3].blocks[1] * 2
    assert not m.can_allocate(1)
    with pytest.raises(OutOfBlocksError):
        m.allocate(4, 1)
    assert 4 not in m.tables, "a failed allocation must not leave a half-built table"


def test_fork_shares_blocks_and_copy_on_write():
    m = BlockManager(num_blocks=8, block_size=4)
    m.allocate(0, 6)                                    # blocks [0, 1]; block 1 half full
    m.fork(0, 1)
    m.fork(0, 2)
    assert m.tables[1].blocks == m.tables[0].blocks == [0, 1]
    assert m.allocator.ref_count[0] == m.allocator.ref_count[1] == 3
    assert m.num_used_blocks == 2, "forking must not allocate"
    # child 1 writes into the shared, partly filled block 1: it gets a private copy
    slot, copy = m.append_slot(1)
    assert copy == (1, 2) and m.tables[1].blocks == [0, 2] and slot == 2 * 4 + 2
    assert m.allocator.ref_count[1] == 2 and m.allocator.ref_count[0] == 3
    slot, copy = m.append_slot(2)
    assert copy == (1, 3) and m.allocator.ref_count[1] == 1
    slot, copy = m.append_slot(0)                       # the last owner writes in place
    assert copy is None and slot == 1 * 4 + 2
    assert m.used_tokens() == 4 + 3 * 3                 # shared full block counted once
    for s in (0, 1, 2):
        m.free(s)
    assert m.allocator.num_free == 8 and set(m.allocator.ref_count) == {0}


def test_fork_of_full_block_needs_no_copy():
    m = BlockManager(num_blocks=4, block_size=4)
    m.allocate(0, 4)                                    # exactly one full block
    m.fork(0, 1)
    slot, copy = m.append_slot(1)
    assert copy is None and m.tables[1].blocks[0] == 0 and len(m.tables[1].blocks) == 2


def test_block_table_tensor_pads():
    m = BlockManager(num_blocks=8, block_size=2)
    m.allocate(0, 5)
    m.allocate(1, 1)
    t = m.block_table_tensor([0, 1])
    assert t.shape == (2, 3) and t[1].tolist() == [3, 0, 0]


def test_allocate_is_all_or_nothing():
    # A prompt that needs more blocks than are free must take none of them (no leak on failure).
    m = BlockManager(num_blocks=4, block_size=4)
    with pytest.raises(OutOfBlocksError):
        m.allocate(0, 17)                             # 5 blocks
    assert m.allocator.num_free == 4 and 0 not in m.tables
    m.allocate(1, 16)                                 # all 4 blocks still usable
    assert m.allocator.num_free == 0
