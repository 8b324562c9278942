-- Template: copy this file, fill in the blanks, then load it:
--
--   cp scripts/seed/template.sql my-trigger.sql && $EDITOR my-trigger.sql
--   psql "$DATABASE_URL" -f my-trigger.sql
--
-- The trigger below is created disabled (enabled = false) so that loading the template as is
-- fires nothing; set it to true, or later: UPDATE triggers SET enabled = true WHERE name = '...';
-- Changes to triggers and actions take effect at once, without restarting anything.
--
-- If a trigger is malformed (unparseable signature, bad condition, bad URL) the pipeline keeps
-- running, skips it and writes the reason to triggers.error:
--   SELECT name, error FROM triggers WHERE error IS NOT NULL;
-- (python scripts/status.py lists them too.)
\set ON_ERROR_STOP on

WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions, confirmations, enabled)
  VALUES (
    -- Unique name; shown in every webhook as trigger.name.
    'my-trigger',
    -- Chain id (1 Ethereum, 10 Optimism, 137 Polygon, 8453 Base, 42161 Arbitrum, 31337 anvil).
    -- An indexer (python -m ingest) must run for this chain.
    1,
    -- Contract address, or NULL for any contract emitting this event.
    -- To watch every contract a factory creates instead (every Uniswap pair, every Safe), leave
    -- it NULL and add the columns factory_address, factory_event_signature (the factory's
    -- creation event) and factory_parameter (its address parameter holding the new contract);
    -- see uniswap_v2_any_pair_large_swaps.sql.
    '0x0000000000000000000000000000000000000000',
    -- The Solidity event declaration; `indexed` marks topics, names become webhook args.
    -- Elementary types, fixed/dynamic arrays and tuples are accepted.
    'Transfer(address indexed from, address indexed to, uint256 value)',
    -- Conditions, or NULL to fire on every such event:
    --   {"all": [C, ...]}, {"any": [C, ...]}, {"not": C},
    --   leaf {"field": F, "op": OP, "value": V}
    --   F: an argument name ("value"; "a.b" tuple member; "a.0" array item) or an event field
    --      (address, block_number, tx_hash, log_index)
    --   OP: eq ne gt gte lt lte in nin contains exists
    --   V: JSON number, decimal string or 0x hex string (integers compare exactly at 256 bits)
    '{"any": [{"field": "value", "op": "gte", "value": "1000000000000000000000"},
              {"field": "to", "op": "in", "value": ["0x000000000000000000000000000000000000dEaD"]}]}',
    -- Confirmations: fire only once the event is this many blocks deep (0 = at once).
    0,
    false)
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
-- One or more actions per trigger. Webhook config:
--   url      http(s) endpoint (private/loopback targets are refused unless WEBHOOK_ALLOW_PRIVATE=true)
--   secret   optional "whsec_" + base64: deliveries are signed (Standard Webhooks)
--   headers  optional extra request headers
--   timeout  optional seconds, overrides WEBHOOK_TIMEOUT
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', '{"url": "https://example.com/hooks/my-trigger",
                        "secret": "whsec_4wJzMj6MK/kEVNjR9l7+XaSP46jWRpjW",
                        "headers": {"x-source": "blockhook"},
                        "timeout": 10}'::jsonb
FROM t;
