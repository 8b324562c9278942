-- Uniswap V2 swaps selling at least 100,000 USDC into the USDC/WETH pair on Ethereum mainnet.
--
--   psql "$DATABASE_URL" -v webhook_url=https://example.com/hooks/swaps -f scripts/seed/uniswap_v2_large_swaps.sql
--
-- In the USDC/WETH pair token0 is USDC (the lower address), so amount0In is USDC paid in (6
-- decimals). Unnamed Solidity "uint" is uint256; the signature below is the pair's own.
\set ON_ERROR_STOP on
\if :{?webhook_url}
\else
  \set webhook_url 'https://example.com/hooks/uniswap-swaps'
\endif
\if :{?webhook_secret}
\else
  \set webhook_secret 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
\endif

WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
  VALUES (
    'uniswap-v2-usdc-weth-large-swaps',
    1,
    '0xB4e16d0168e52d35CaCD2c6185b44281Ec28C9Dc',   -- Uniswap V2 USDC/WETH pair
    'Swap(address indexed sender, uint amount0In, uint amount1In, uint amount0Out, uint amount1Out, address indexed to)',
    -- 100,000 USDC = 10^11 base units; hex strings are accepted too ("0x174876e800").
    '{"all": [{"field": "amount0In", "op": "gte", "value": "100000000000"}]}')
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', jsonb_build_object('url', :'webhook_url', 'secret', :'webhook_secret',
                                         'timeout', 5)
FROM t;
