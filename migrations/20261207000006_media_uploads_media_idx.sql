-- no-transaction
-- Deleting a media row (its owner's request, or the collector) clears the uploads that made it
-- (ON DELETE SET NULL): without an index, a scan of media_uploads per deleted media.
CREATE INDEX CONCURRENTLY media_uploads_media_idx ON media_uploads (media_id) WHERE media_id IS NOT NULL;
