-- ERC721 mints to a watched wallet: any NFT collection (address NULL = any contract) minting a
-- token to one wallet on Ethereum mainnet.
--
--   psql "$DATABASE_URL" -v wallet=0xYourWallet -v webhook_url=https://example.com/hooks/nft \
--        -f scripts/seed/erc721_mints_to_wallet.sql
--
-- ERC20 and ERC721 share the Transfer topic0, but an ERC721 Transfer has three indexed
-- parameters (four topics) where an ERC20 one has two: ERC20 logs do not decode against this
-- signature and are skipped, so only NFT transfers can match.
\set ON_ERROR_STOP on
\if :{?wallet}
\else
  \set wallet '0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045'
\endif
\if :{?webhook_url}
\else
  \set webhook_url 'https://example.com/hooks/nft-mints'
\endif

WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
  VALUES (
    'nft-mints-to-watched-wallet',
    1,
    NULL,                                           -- any contract
    'Transfer(address indexed from, address indexed to, uint256 indexed tokenId)',
    -- A mint is a transfer from the zero address.
    jsonb_build_object('all', jsonb_build_array(
      jsonb_build_object('field', 'from', 'op', 'eq',
                         'value', '0x0000000000000000000000000000000000000000'),
      jsonb_build_object('field', 'to', 'op', 'eq', 'value', :'wallet'))))
  ON CONFLICT (name) DO NOTHING
  RETURNING id)
-- No secret: deliveries are sent unsigned (add "secret": "whsec_..." to sign them), with an
-- extra header the receiving service expects.
INSERT INTO actions (trigger_id, type, config)
SELECT id, 'webhook', jsonb_build_object(
         'url', :'webhook_url',
         'headers', jsonb_build_object('x-api-key', 'change-me'))
FROM t;
