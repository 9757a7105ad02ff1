-- Visibility is now written inline into each query (haberci_backend::social::store::visible):
-- as a SQL function with sub-queries, can_see_post was never inlined by the planner and cost
-- ≈ 40 µs per candidate row (docs/BENCHMARKS.md, "Social"). One definition stays: the Rust one.
DROP FUNCTION can_see_post(uuid, uuid, boolean, timestamptz, text, uuid);

-- Foreign keys whose cascades scanned whole tables when an account or post is deleted
-- (found by the social benchmark's clean-up): every referencing column gets an index.
CREATE INDEX posts_by_author_all ON posts (author_id);
CREATE INDEX posts_removed_by ON posts (removed_by) WHERE removed_by IS NOT NULL;
CREATE INDEX comments_by_author ON comments (author_id);
CREATE INDEX comments_by_parent ON comments (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX notifications_by_actor ON notifications (actor_id);
CREATE INDEX notifications_by_post ON notifications (post_id) WHERE post_id IS NOT NULL;
CREATE INDEX notifications_by_comment ON notifications (comment_id) WHERE comment_id IS NOT NULL;
CREATE INDEX reports_by_reporter ON reports (reporter_id);
CREATE INDEX reports_by_post ON reports (post_id) WHERE post_id IS NOT NULL;
CREATE INDEX reports_by_user ON reports (user_id) WHERE user_id IS NOT NULL;
