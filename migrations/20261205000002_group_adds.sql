-- #20: who may add a user to a group: 'everyone', 'following' (people the user follows) or
-- 'nobody'. Checked by the API (accounts::GroupAdds); a constant default, so no table rewrite.
ALTER TABLE users ADD COLUMN group_adds text NOT NULL DEFAULT 'everyone';
