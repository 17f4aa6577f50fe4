-- The worker's write path in one round trip (src/db/repositories/messages.ts, persistBatch).
-- A batch used to take nine statements in a transaction; each is a socket write and a
-- wake-up on both sides, and the worker's profile was a third socket writes. Called as one
-- statement, the function's work is one transaction: a RAISE undoes all of it.
--
-- Input: parallel arrays, one element per message, deduplicated on (sender, client_msg_id)
-- by the caller. A direct send gives its pair's direct_key (computed by the caller, so it
-- matches the keys already stored byte for byte) and no channel; a channel send gives the
-- channel and no direct_key.
-- Output: one row per element: 'duplicate' (stored before; the stored row, with the
-- element's 1-based position i), 'stored' (the new row; i is NULL, the caller matches it
-- by sender and client_msg_id) or 'forbidden' (the sender is not a member; position i).
-- Every join is an index lookup from the batch's rows: the planner cannot know how many
-- elements an array holds, and a nested loop between two batch-sized sets is quadratic.
-- Sequential scans are off inside the function: its plans are cached per connection, and
-- a plan made while a table was small (a new deployment, before autovacuum analyzes it)
-- would otherwise keep scanning the whole messages table for every batch.
-- SQLSTATE CH001: a concurrent transaction stored one of these messages first; nothing was
-- written, and the caller retries the batch (its seq would otherwise leave a gap).
CREATE OR REPLACE FUNCTION chat_persist_batch(
  p_sender text[],
  p_client_msg uuid[],
  p_to_user text[],
  p_channel uuid[],
  p_direct_key text[],
  p_content text[]
) RETURNS TABLE (
  i integer,
  status text,
  kind text,
  id bigint,
  channel_id uuid,
  seq bigint,
  sender_id text,
  to_user_id text,
  client_msg_id uuid,
  content text,
  created_at timestamptz
)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
  v_pos integer[];
  v_channel uuid[];
  v_to_user text[];
  v_sender text[];
  v_client_msg uuid[];
  v_content text[];
  v_forbidden integer[];
  v_stored integer;
BEGIN
  -- 1. Direct channels that do not exist yet, with their members. A transaction creating
  -- the same pair concurrently makes ON CONFLICT wait for it and skip; the next
  -- statement sees its row.
  WITH wanted AS (
    SELECT DISTINCT k.direct_key
    FROM unnest(p_direct_key) AS k(direct_key)
    WHERE k.direct_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM channels c WHERE c.direct_key = k.direct_key)
  ), created AS (
    INSERT INTO channels (kind, direct_key, created_by)
    SELECT 'direct', w.direct_key, w.direct_key::jsonb ->> 0 FROM wanted w ORDER BY w.direct_key
    ON CONFLICT (direct_key) DO NOTHING
    RETURNING channels.id, channels.direct_key
  )
  INSERT INTO members (channel_id, user_id)
  SELECT DISTINCT c.id, u.user_id
  FROM created c, jsonb_array_elements_text(c.direct_key::jsonb) AS u(user_id)
  ON CONFLICT DO NOTHING;

  -- 2. Stored before: the stored rows.
  RETURN QUERY
    SELECT x.i::integer, 'duplicate'::text, c.kind, m.id, m.channel_id, m.seq, m.sender_id, m.to_user_id,
      m.client_msg_id, m.content, m.created_at
    FROM unnest(p_sender, p_client_msg) WITH ORDINALITY AS x(sender_id, client_msg_id, i)
    JOIN messages m ON m.sender_id = x.sender_id AND m.client_msg_id = x.client_msg_id
    JOIN channels c ON c.id = m.channel_id;

  -- 3. The rest: each one's channel, or none when the sender may not post there. Sent to
  -- a channel id: members only, and a direct channel's recipient is the other user of its key.
  SELECT array_agg(r.i ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.channel_id ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.to_user_id ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.sender_id ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.client_msg_id ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.content ORDER BY r.i) FILTER (WHERE r.channel_id IS NOT NULL),
    array_agg(r.i ORDER BY r.i) FILTER (WHERE r.channel_id IS NULL)
  INTO v_pos, v_channel, v_to_user, v_sender, v_client_msg, v_content, v_forbidden
  FROM (
    SELECT x.i::integer AS i, x.sender_id, x.client_msg_id, x.content,
      coalesce(dc.id, gc.id) AS channel_id,
      CASE
        WHEN dc.id IS NOT NULL THEN x.to_user_id
        WHEN gc.kind = 'direct' THEN
          CASE WHEN gc.direct_key::jsonb ->> 0 = x.sender_id THEN gc.direct_key::jsonb ->> 1 ELSE gc.direct_key::jsonb ->> 0 END
      END AS to_user_id,
      x.direct_key
    FROM unnest(p_sender, p_client_msg, p_to_user, p_channel, p_direct_key, p_content)
      WITH ORDINALITY AS x(sender_id, client_msg_id, to_user_id, channel_id, direct_key, content, i)
    LEFT JOIN channels dc ON x.direct_key IS NOT NULL AND dc.direct_key = x.direct_key
    LEFT JOIN channels gc ON x.direct_key IS NULL AND gc.id = x.channel_id
      AND EXISTS (SELECT 1 FROM members mb WHERE mb.channel_id = gc.id AND mb.user_id = x.sender_id)
    WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = x.sender_id AND m.client_msg_id = x.client_msg_id)
  ) r;

  -- A direct pair always has its channel after step 1 (channels are never deleted while
  -- in use); a missing one means a concurrent change: retry.
  IF EXISTS (SELECT 1 FROM unnest(v_forbidden) AS f(i) WHERE p_direct_key[f.i] IS NOT NULL) THEN
    RAISE EXCEPTION 'a direct channel of this batch changed concurrently' USING ERRCODE = 'CH001';
  END IF;
  RETURN QUERY
    SELECT f.i, 'forbidden'::text, NULL::text, NULL::bigint, NULL::uuid, NULL::bigint, NULL::text, NULL::text,
      NULL::uuid, NULL::text, NULL::timestamptz
    FROM unnest(v_forbidden) AS f(i);
  IF v_pos IS NULL THEN
    RETURN;
  END IF;

  -- 4. Lock the channels in id order (two workers never deadlock), then number the new
  -- messages from each channel's last_seq, as this statement's fresh snapshot sees it.
  PERFORM 1 FROM channels c WHERE c.id = ANY (v_channel) ORDER BY c.id FOR UPDATE;
  RETURN QUERY
    WITH ins AS (
      INSERT INTO messages (channel_id, seq, sender_id, to_user_id, client_msg_id, content)
      SELECT y.channel_id, c.last_seq + row_number() OVER (PARTITION BY y.channel_id ORDER BY y.i),
        y.sender_id, y.to_user_id, y.client_msg_id, y.content
      FROM unnest(v_pos, v_channel, v_to_user, v_sender, v_client_msg, v_content)
        AS y(i, channel_id, to_user_id, sender_id, client_msg_id, content)
      JOIN channels c ON c.id = y.channel_id
      ON CONFLICT (sender_id, client_msg_id) DO NOTHING
      RETURNING messages.id, messages.channel_id, messages.seq, messages.sender_id, messages.to_user_id,
        messages.client_msg_id, messages.content, messages.created_at
    )
    SELECT NULL::integer, 'stored'::text, c.kind, ins.id, ins.channel_id, ins.seq, ins.sender_id, ins.to_user_id,
      ins.client_msg_id, ins.content, ins.created_at
    FROM ins JOIN channels c ON c.id = ins.channel_id;
  GET DIAGNOSTICS v_stored = ROW_COUNT;
  -- Fewer rows: a concurrent transaction stored one of these first, and the seqs handed
  -- out would leave a gap. Undo everything; the caller retries and finds it a duplicate.
  IF v_stored <> cardinality(v_pos) THEN
    RAISE EXCEPTION 'a message of this batch was stored concurrently' USING ERRCODE = 'CH001';
  END IF;

  UPDATE channels c SET last_seq = c.last_seq + k.n
  FROM (SELECT u.channel_id, count(*) AS n FROM unnest(v_channel) AS u(channel_id) GROUP BY u.channel_id) k
  WHERE c.id = k.channel_id;
END
$$;
