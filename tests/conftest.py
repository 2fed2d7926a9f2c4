import pytest

from fustor.store import Store


@pytest.fixture
def store(tmp_path):
    st = Store(tmp_path / "tree.lmdb")
    yield st
    st.close()
