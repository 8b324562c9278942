-- A trigger with confirmations: WETH deposits of at least 100 ETH on Ethereum mainnet, sent only
-- once the deposit is 12 blocks deep. A reorg shallower than 12 blocks never reaches the
-- endpoint: no event.matched is sent for an orphaned deposit, so no event.removed is needed.
-- The cost is latency: about 12 x 12 s = 2.4 minutes after the block.
--
--   psql "$DATABASE_URL" -v webhook_url=https://example.com/hooks/weth -f scripts/seed/confirmed_weth_deposits.sql
\set ON_ERROR_STOP on
\if :{?webhook_url}
\else
  \set webhook_url 'https://example.com/hooks/weth-deposits'
\endif
\if :{?webhook_secret}
\else
  \set webhook_secret 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD'
\endif

WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions, confirmations)
  VALUES (
    'weth-large-deposits-12-confirmations',
    1,
    '0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2',   -- WETH9
    'Deposit(address indexed dst, uint wad)',
    -- 100 ETH = 100 * 10^18 wei.
    '{"all": [{"field": "wad", "op": "gte", "value": "100000000000000000000"}]}',
    12)
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', jsonb_build_object('url', :'webhook_url', 'secret', :'webhook_secret')
FROM t;
