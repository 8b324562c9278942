-- Large swaps on ANY Uniswap V2 pair on Ethereum mainnet: a factory trigger. It watches every
-- pair the Uniswap V2 factory has created or will create (PairCreated's `pair` parameter), and
-- nothing else: a look-alike contract emitting the same Swap event is not a pair.
--
--   psql "$DATABASE_URL" -v webhook_url=https://example.com/hooks/swaps -f scripts/seed/uniswap_v2_any_pair_large_swaps.sql
--
-- "Over 100 ETH": amount0In or amount1In of at least 100 * 10^18 base units. On a WETH pair that
-- is 100 WETH paid in on the WETH side; the Swap event does not say which side is WETH, so on a
-- pair of two other 18-decimal tokens it means 100 of either token.
\set ON_ERROR_STOP on
\if :{?webhook_url}
\else
  \set webhook_url 'https://example.com/hooks/uniswap-any-pair-swaps'
\endif
\if :{?webhook_secret}
\else
  \set webhook_secret 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
\endif

WITH t AS (
  INSERT INTO triggers (name, chain_id, event_signature, conditions,
                        factory_address, factory_event_signature, factory_parameter)
  VALUES (
    'uniswap-v2-any-pair-large-swaps',
    1,
    'Swap(address indexed sender, uint amount0In, uint amount1In, uint amount0Out, uint amount1Out, address indexed to)',
    '{"any": [{"field": "amount0In", "op": "gte", "value": "100000000000000000000"},
              {"field": "amount1In", "op": "gte", "value": "100000000000000000000"}]}',
    '0x5C69bEe701ef814a2B6a3EDD4B1652CB9cc5aA6f',   -- Uniswap V2 factory
    'PairCreated(address indexed token0, address indexed token1, address pair, uint)',
    'pair')
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', jsonb_build_object('url', :'webhook_url', 'secret', :'webhook_secret',
                                         'timeout', 5)
FROM t;
