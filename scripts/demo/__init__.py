"""The local demo run by ``make run`` without ``RPC_URL``: a devnet, a real OpenZeppelin ERC20,
a trigger on its large transfers, and a receiver that verifies and prints each webhook."""
