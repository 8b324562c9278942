-- ERC20 whale transfers: every USDC transfer of at least 1,000,000 USDC on Ethereum mainnet.
--
--   psql "$DATABASE_URL" -v webhook_url=https://example.com/hooks/usdc \
--        -v webhook_secret=whsec_... -f scripts/seed/erc20_whale_transfers.sql
--
-- Without -v the placeholders below are used (example.com does not answer: deliveries will be
-- retried and finally marked failed; point webhook_url at your endpoint).
-- Re-running the file changes nothing: the trigger name is unique and ON CONFLICT skips it.
\set ON_ERROR_STOP on
\if :{?webhook_url}
\else
  \set webhook_url 'https://example.com/hooks/whale-transfers'
\endif
\if :{?webhook_secret}
\else
  \set webhook_secret 'whsec_4wJzMj6MK/kEVNjR9l7+XaSP46jWRpjW'
\endif

WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions, confirmations)
  VALUES (
    'usdc-whale-transfers',
    1,                                              -- Ethereum mainnet
    '0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48',   -- USDC (any case: addresses compare case-insensitively)
    'Transfer(address indexed from, address indexed to, uint256 value)',
    -- USDC has 6 decimals: 1,000,000 USDC = 10^12 base units. Integers compare exactly at
    -- 256 bits; write large values as decimal strings (JSON numbers lose precision above 2^53).
    '{"all": [{"field": "value", "op": "gte", "value": "1000000000000"}]}',
    0)
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', jsonb_build_object('url', :'webhook_url', 'secret', :'webhook_secret')
FROM t;
