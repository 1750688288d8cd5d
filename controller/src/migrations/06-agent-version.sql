-- The version each server's agent said hello with (version skew).
ALTER TABLE servers ADD COLUMN agent_version TEXT;
