from tests.support.anvil import Anvil


def test_anvil_mines_and_answers_chain_id(anvil: Anvil) -> None:
    assert int(anvil.rpc("eth_chainId"), 16) == 31337
    before = anvil.head()
    anvil.mine(3)
    assert anvil.head() == before + 3
